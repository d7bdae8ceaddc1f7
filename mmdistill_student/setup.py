from glob import glob

from setuptools import find_packages, setup

package_name = 'mmdistill_student'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.py')),
        ('share/' + package_name + '/config', glob('config/*')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='mmdistill maintainers',
    maintainer_email='maintainers@mmdistill.dev',
    description='Audio front end, audio student network and student_node.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'student_node = mmdistill_student.student_node:main',
        ],
    },
)
